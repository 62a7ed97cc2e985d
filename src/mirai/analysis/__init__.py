"""Analysis tools: the convergence benchmark, training curves, t-SNE token maps and class maps.

Submodules import PyTorch, matplotlib and scikit-learn; import the one you need
(``mirai.analysis.convergence``, ``.curves``, ``.tsne``, ``.classmap``).
"""
