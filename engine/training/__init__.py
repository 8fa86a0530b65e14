"""The training run, in named pieces.

- :mod:`.paths`: the files a run writes, and ``TrainingError`` (a problem the user can fix);
- :mod:`.prepare`: ``prepare_run`` — everything known before torch is imported
  (dataset scan, plan, model headers, preflight, resume checks), shared by
  ``loratui check``, ``loratui train`` and the form's plan panel;
- :mod:`.batches`: ``BatchSource`` — latents (cached or encoded on the fly),
  captions, flips and their RNG, skipping what a resumed run has seen;
- :mod:`.optim`: optimizer and LR scheduler from the registries;
- :mod:`.step`: one micro-batch's loss (the family's target, noise offset,
  prior-loss weight, min-SNR) and the optimizer step with its NaN guard;
- :mod:`.checkpoint`: ``Checkpointer`` — LoRA and state saves, rotation,
  restore on resume, the finite-weights check, disk-full handling;
- :mod:`.loop`: setting the run up and the loop itself.

``loratui.engine.train.run_training`` runs it and turns every failure into a
``Failed`` event.
"""
