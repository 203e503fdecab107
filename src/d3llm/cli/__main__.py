"""`python -m d3llm.cli` (also under torchrun and `accelerate launch -m d3llm.cli`): the `d3llm` command."""

from d3llm.cli import main

main()
