"""Analysis tools: training curves, t-SNE token maps, class maps
and the per-image training FLOPs of the paper's Table 15 (the convergence benchmark is
``mirai.bench``).

Submodules import PyTorch, matplotlib and scikit-learn; import the one you need
(``mirai.analysis.curves``, ``.tsne``, ``.classmap``, ``.flops``).
"""
