"""darl-study: a reproducible study of DaRL (Distribution-Aware Robust Learning) for relevance models.

One module a concept: data (loaders, degrees), splits (ID/OOD protocols), modeling (backbones, pooling, head),
training (the loop, the linear probe), features (cached features), representations (DASA's candidate features,
length-stratified detector quality), losses (OCC), interpolation (LPFT weights), ood (DASA's scores), dasa (the
unlabelled pool, its selection, the augmented train), metrics (classification, confidence), intervals (paired
bootstrap over test queries), verdicts (the five claims), cache (fingerprints in cache keys, locks, atomic
writes), config (RunConfig, method names), pipeline (FT and LPFT runs, from config to result files), results
(the one reader and writer of result files), tables, figures, notebooks (papermill with parameter checks),
runner (a profile's notebooks into HTML pages and an index). Command line: `python -m darl_utils --help`.
"""
import warnings

# Libraries we call use tqdm.auto, which warns inside a notebook without ipywidgets; our bars are plain text, and
# the warning would print a local path into every HTML page.
warnings.filterwarnings("ignore", message="IProgress not found")
# UMAP says that a fixed random_state runs single-threaded (we fix it for reproducible maps), and that its spectral
# start fell back to a random one (query features repeat across a query's pairs); both print a local path.
warnings.filterwarnings("ignore", message="n_jobs value .* overridden", category=UserWarning)
warnings.filterwarnings("ignore", message="Spectral initialisation failed", category=UserWarning)
