"""Layer 2, training: corpora, the document split, tokenizer and token cache; the model; the
schedule, the step, precision and compile probes, evaluation, cooldown probes and checkpoints;
`trainer.train(cfg, *, report)`. Imports only `spec`; never imports Ray."""
