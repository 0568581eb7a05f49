"""Evaluation: metrics with confidence intervals, classical baselines, the simulator's oracle.

* :mod:`.metrics`: classification/regression metrics with (cluster) bootstrap intervals;
* :mod:`.baselines`: FC + linear models (scikit-learn), their few-shot curve, and a task's
  baselines on the rows the model is asked about;
* :mod:`.oracle`: the simulator's ground-truth predictions;
* :mod:`.rows`: a task's labelled evaluation rows and the scoring of one method's answers;
* :mod:`.scoring`: the model's constrained and free-text answers to questions about scans;
* :mod:`.adapt`: adaptation to K shots (LoRA or full fine-tuning) and undoing it;
* :mod:`.probes`: linear probes on the tokenizer's scan vectors and the LLM state;
* :mod:`.retrieval`: fMRI <-> text retrieval and the one recall@k computation;
* :mod:`.tokenizer`: held-out evaluation of a tokenizer (reconstruction, codes, retrieval);
* :mod:`.run`: one evaluation run, a table of per-mode functions;
* :mod:`.report`: schema, summary text, figures and HTML of a report.
"""
