"""lm-eval's command line with the `d3llm` model registered.

    python -m d3llm.eval.lm_eval_cli run --model d3llm --model_args model=tiny-teacher,method=d3llm \
        --tasks gsm8k --batch_size 8

The plain `lm_eval` command does not import d3llm, so it does not know the model; this module
imports the adapter (which registers it) and hands over to lm-eval's own entry point. It is a
module of its own so that the adapter is never run as `__main__` and registered twice.
"""

import d3llm.eval.lm_eval_adapter  # noqa: F401  (registers "d3llm" with lm-eval)
from lm_eval.__main__ import cli_evaluate

if __name__ == "__main__":
    cli_evaluate()
