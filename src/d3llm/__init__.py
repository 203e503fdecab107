"""d3llm: ultra-fast diffusion language models.

Public API (stable names):

    from d3llm import load_model, get_task
    lm = load_model("path/or/bundled-name")      # -> d3llm.models.LoadedModel
    task = get_task("arith")                     # -> d3llm.tasks.Task

See README.md for the command-line tool.
"""

from d3llm.errors import D3llmError, ModelLoadError, TaskError

__version__ = "0.1.0"

__all__ = ["D3llmError", "ModelLoadError", "TaskError", "load_model", "get_task", "__version__"]


def __getattr__(name: str):
    # Lazy imports: `import d3llm` must stay cheap (transformers costs seconds to import).
    if name == "load_model":
        from d3llm.models.loading import load_model

        return load_model
    if name == "get_task":
        from d3llm.tasks import get_task

        return get_task
    raise AttributeError(f"module 'd3llm' has no attribute {name!r}")
