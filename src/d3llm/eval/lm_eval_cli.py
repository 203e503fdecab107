"""lm-eval's command line with the `d3llm` model registered: `d3llm-lm-eval`.

    d3llm-lm-eval run --model d3llm --model_args model=tiny-teacher,method=d3llm \\
        --tasks gsm8k --batch_size 16
    python -m d3llm.eval.lm_eval_cli run ...   # the same

lm-eval 0.4.x has no plugin mechanism for models: its registry holds the models it ships
(`lm_eval.models.MODEL_MAPPING`) and those registered by code that has been imported, and it
reads no package entry points, so the plain `lm_eval` command cannot find `d3llm`. This module
imports the adapter (which registers it) and hands over to lm-eval's own entry point; it is a
module of its own so that the adapter is never run as `__main__` and registered twice. A d3llm
error (a bad model argument, say) is one line on stderr and exit code 2, as in `d3llm`.
"""

import sys

from d3llm.errors import D3llmError

# Printed before lm-eval's own help (`d3llm-lm-eval -h`): what this command adds to it.
PREFACE = """d3llm-lm-eval: lm-evaluation-harness's command line with the model `d3llm` registered.

  d3llm-lm-eval run --model d3llm --tasks gsm8k --batch_size 16 \\
      --model_args pretrained=tiny-d3llm,method=d3llm,threshold=0.5

  model_args: pretrained= (or model=) a bundled name or model folder; method= a decode preset;
  max_new_tokens=, dtype=, device=, chat=, and any decode setting (threshold=, block_size=, ...).
  Generation tasks only. Through a server instead: `d3llm serve MODEL`, then
  lm_eval --model local-chat-completions --apply_chat_template \\
      --model_args model=MODEL,base_url=http://127.0.0.1:8000/v1/chat/completions
  lm-eval's own help follows.
"""


def main() -> None:
    try:  # deliberately lazy (allowed in tests/unit/test_structure.py): lm-eval is the optional `eval` extra
        from lm_eval.__main__ import cli_evaluate

        import d3llm.eval.lm_eval_adapter  # noqa: F401  (registers "d3llm" with lm-eval)
    except ImportError as exc:
        sys.stderr.write(f"error: d3llm-lm-eval needs lm-eval ({exc}): pip install 'd3llm[eval]'\n")
        raise SystemExit(2) from None
    if any(arg in ("-h", "--help") for arg in sys.argv[1:]):
        sys.stdout.write(PREFACE + "\n")
        sys.stdout.flush()
    try:
        cli_evaluate()
    except D3llmError as exc:
        sys.stderr.write(f"error: {exc}\n")
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
