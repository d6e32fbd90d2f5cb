"""Options of S3FT (Selective Self-to-Supervised Fine-Tuning, arXiv:2502.08130).

The paper fixes no generation budget, batch size or paraphrase wording (there is no official code);
the defaults here are ours.
"""

# No ``from __future__ import annotations``: HfArgumentParser needs the real field types.
from dataclasses import dataclass, field

from ftplugins.options import check_range

DEFAULT_PARAPHRASE_TEMPLATE = (
    "{prompt}\n\nReference answer: {completion}\n\n"
    "Rewrite the reference answer in your own words, keeping its final answer.\n"
)


@dataclass
class S3ftOptions:
    s3ft_judge: str = field(
        default="normalized",
        metadata={
            "help": "Judge(prediction, gold) -> bool deciding whether a model response may replace the gold one. "
            "Built in: exact, normalized (case, punctuation and whitespace ignored), numeric (last number in the "
            "text, compared numerically), code (the response's code + the row's unit tests, run in a subprocess). "
            "Or a dotted path to your own function: 'pkg.mod:func' or 'pkg.mod.func'. In Python a callable works too."
        },
    )
    s3ft_paraphrase: bool = field(
        default=True,
        metadata={"help": "When the model's own answer fails the judge, ask the frozen initial model to rephrase "
                          "the gold answer and use the paraphrase if it passes (paper's second branch)."},
    )
    s3ft_paraphrase_template: str = field(
        default=DEFAULT_PARAPHRASE_TEMPLATE,
        metadata={"help": "Prompt asking for a paraphrase; '{prompt}' and '{completion}' are replaced by the row's "
                          "prompt text and gold answer (plain replacement, so braces in code are safe)."},
    )
    s3ft_max_new_tokens: int = field(
        default=256, metadata={"help": "Generation budget (tokens) of each response and paraphrase (greedy)."}
    )
    s3ft_batch_size: int = field(
        default=16, metadata={"help": "Rows generated per batch; one batch is also one cache chunk (resume unit)."}
    )
    s3ft_cache: bool = field(
        default=True,
        metadata={"help": "Cache the constructed targets on disk (JSONL chunks) so an interrupted or repeated run "
                          "resumes instead of generating again. Needed to share one construction across processes."},
    )
    s3ft_cache_dir: str = field(
        default="", metadata={"help": "Where the cache lives; empty: OUTPUT_DIR/s3ft_cache."}
    )
    s3ft_code_tests_column: str = field(
        default="tests",
        metadata={"help": "Column with the unit tests the code judge runs after the response's code (a string, or "
                          "a list of statements such as asserts)."},
    )
    s3ft_code_timeout: float = field(
        default=10.0, metadata={"help": "Seconds one code-judge subprocess may run before it is killed (fails)."}
    )

    def __post_init__(self):
        check_range("s3ft_max_new_tokens", self.s3ft_max_new_tokens, 1, 1_000_000)
        check_range("s3ft_batch_size", self.s3ft_batch_size, 1, 1_000_000)
        check_range("s3ft_code_timeout", self.s3ft_code_timeout, 0.01, 86_400)
        if isinstance(self.s3ft_judge, str) and not self.s3ft_judge.strip():
            raise ValueError("--s3ft_judge '': expected a built-in judge name or a dotted path 'pkg.mod:func'")
        if self.s3ft_paraphrase and "{completion}" not in self.s3ft_paraphrase_template:
            raise ValueError(
                "--s3ft_paraphrase_template must contain '{completion}' (the gold answer to rephrase)"
            )
