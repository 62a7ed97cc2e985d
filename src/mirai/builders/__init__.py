"""Builders of the small committed Fashion-MNIST assets (``mirai/assets/fashion/``).

The method itself (``mirai.foresight``) and the networks (``mirai.models``) do not depend on
how these assets were made; this package holds that scaffolding, so that each committed
folder can be reproduced by one CLI command (each asset's README gives it):

* ``tokenizer`` — VQ tokenizer training, its reconstruction report and the k-means baseline
  (``vq8``, ``vq16``; ``mirai tokenizer train|eval``);
* ``encoder`` — training of the Fashion-MNIST foresight encoders (``encoder8_ssl`` by default,
  ``encoder8`` with ``--objective supervised``; ``mirai encoder train-fashion``), and ``encoder_probe`` — the linear probe that measures
  it (``mirai encoder probe``);
* ``evaluator`` — training of the classifier that scores samples (``evaluator``;
  ``mirai evaluate train-fashion-classifier``).

Submodules import PyTorch and the data loaders; import the one you need.
"""
