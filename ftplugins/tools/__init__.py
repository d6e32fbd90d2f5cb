"""Model tools that are not training: conjugate prompting (:mod:`.conjugate`), contrastive generative exploration
(:mod:`.contrastive`, iterative: :mod:`.cge_explore`)."""
