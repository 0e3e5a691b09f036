"""darl-study: a reproducible study of DaRL (Distribution-Aware Robust Learning) for relevance models.

One module a concept: data (loaders, degrees), splits (ID/OOD protocols), modeling (backbones, pooling, head),
training (the loop), metrics, config (RunConfig), pipeline (a run from config to result files), reports (tables,
figures), notebooks (papermill with parameter checks). Command line: `python -m darl_utils --help`.
"""
