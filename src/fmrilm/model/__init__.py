"""Stage 2: the joint fMRI-language model (id layout, FMRILM, objectives, generation, QA)."""
