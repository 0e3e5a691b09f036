"""darl-study: a reproducible study of DaRL (Distribution-Aware Robust Learning) for relevance models.

One module a concept: data (loaders, degrees), splits (ID/OOD protocols), modeling (backbones, pooling, head),
training (the loop, the linear probe), features (cached features), losses (OCC), interpolation (LPFT weights),
ood (DASA's scores), dasa (the unlabelled pool, its selection, the augmented train), metrics (classification,
confidence), config (RunConfig), pipeline (FT and LPFT runs, from config to result files), reports (tables,
figures, verdicts), notebooks (papermill with parameter checks). Command line: `python -m darl_utils --help`.
"""
import warnings

# Libraries we call use tqdm.auto, which warns inside a notebook without ipywidgets; our bars are plain text, and
# the warning would print a local path into every HTML page.
warnings.filterwarnings("ignore", message="IProgress not found")
