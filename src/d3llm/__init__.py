"""d3llm: ultra-fast diffusion language models.

Public API (stable names):

    import d3llm
    d3llm.generate("tiny-teacher", "Tom has 3 apples ...", method="d3llm").texts
    lm = d3llm.load_model("path/or/bundled-name")  # -> d3llm.models.LoadedModel
    task = d3llm.get_task("arith")                 # -> d3llm.tasks.Task

See README.md for the command-line tool.
"""

from d3llm.errors import D3llmError, ModelLoadError, TaskError

__version__ = "0.1.0"

__all__ = ["D3llmError", "ModelLoadError", "TaskError", "generate", "get_task", "load_model", "__version__"]


def __getattr__(name: str):
    # Lazy imports: `import d3llm` must stay cheap (transformers costs seconds to import);
    # deliberate, and allowed by tests/unit/test_structure.py.
    if name == "load_model":
        from d3llm.models.loading import load_model

        return load_model
    if name == "generate":
        from d3llm.api import generate

        return generate
    if name == "get_task":
        from d3llm.tasks import get_task

        return get_task
    raise AttributeError(f"module 'd3llm' has no attribute {name!r}")
