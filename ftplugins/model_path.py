"""Which models a run may load: a local folder, or a Hub id downloaded as ``trl sft`` downloads it.

Checked before the model loads, so that a typo or a missing download fails with the fix instead of
a traceback from deep inside ``from_pretrained`` (or, under DDP, one per process).
"""

from __future__ import annotations

import os

from .errors import ModelPathError


def check_model_path(path: str, revision: str | None = None, config_name: str = "config.json",
                     kind: str = "a transformers model") -> None:
    """A local model folder, or a Hub model id that ``from_pretrained`` will download (as ``trl sft`` does).

    Refused before anything loads: a path that does not exist, a folder without ``config_name`` (``config.json``;
    ``model_index.json`` for a diffusers pipeline, which is ``kind``), a Hub id that is not in the cache while
    ``HF_HUB_OFFLINE=1``, and (online) a Hub id the Hub does not have."""
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, config_name)):
            raise ModelPathError(f"model path {path!r} is a folder without {config_name}; point to a saved model "
                                 f"({kind}).")
        return
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(path)
        is_repo_id = not os.path.exists(path) and path.count("/") <= 1 and not path.startswith((".", "~"))
    except HFValidationError:
        is_repo_id = False
    if not is_repo_id:
        raise ModelPathError(
            f"model {path!r} does not exist: it is neither a local folder nor a model in the Hugging Face cache, "
            "and not a Hub model id (org/name). Check the path, or save the model there first."
        )
    if isinstance(try_to_load_from_cache(path, config_name, revision=revision), str):
        return
    if hub_offline():
        raise ModelPathError(
            f"model {path!r} does not exist: it is neither a local folder nor a model in the Hugging Face cache, "
            "and HF_HUB_OFFLINE=1 forbids downloading it. Unset HF_HUB_OFFLINE to download it from the Hub, "
            f"download it first with `hf download {path}`, or check the path."
        )
    _check_hub_model(path, revision, config_name, kind)


def hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) as huggingface_hub reads it, at call time."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.upper() in ("1", "ON", "YES", "TRUE")


def _check_hub_model(repo_id: str, revision: str | None, config_name: str = "config.json",
                     kind: str = "a transformers model") -> None:
    """Fetch the model's config file (the first file ``from_pretrained`` downloads anyway), so that a wrong id,
    revision or missing access fails here with the fix rather than deep inside the trainer."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (EntryNotFoundError, GatedRepoError, LocalEntryNotFoundError,
                                        RepositoryNotFoundError, RevisionNotFoundError)

    where = f"model {repo_id!r}" + (f" at revision {revision!r}" if revision else "")
    try:
        hf_hub_download(repo_id, config_name, revision=revision)
    except GatedRepoError:
        raise ModelPathError(f"{where} is gated on the Hub: accept its terms on its page, then log in with "
                             "`hf auth login` (or set HF_TOKEN).") from None
    except RepositoryNotFoundError:
        raise ModelPathError(f"{where} does not exist: it is neither a local folder nor a model on the Hub you can "
                             "access. Check the path or id; for a private model log in with `hf auth login` "
                             "(or set HF_TOKEN).") from None
    except RevisionNotFoundError:
        raise ModelPathError(f"{where}: no such revision on the Hub; check --model_revision.") from None
    except EntryNotFoundError:
        raise ModelPathError(f"{where} has no {config_name} on the Hub: it is not {kind}.") from None
    except LocalEntryNotFoundError as exc:
        raise ModelPathError(f"{where} is not in the Hugging Face cache and the Hub could not be reached ({exc}). "
                             "Check the network, or download it first with `hf download`.") from None
