"""The application on top of the trainer: the train loop (world → SFT → async GRPO → eval), evaluation,
the SFT warm-start and its scripted expert, the tiny default model, metrics and plots, and the
registered-name check of a loaded config. rl/cli.py is the `fanout` command over these.
"""
