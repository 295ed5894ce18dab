"""neqtune: search budgeted-update fine-tuning policies with Ray Tune and Optuna.

python run_search.py                          # the embedded digits space
python run_search.py --space spaces/vww.yaml
"""

from neqtune.search.cli import run

if __name__ == "__main__":
    run()
