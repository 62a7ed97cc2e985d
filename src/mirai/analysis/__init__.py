"""Analysis tools: the convergence benchmark, training curves and t-SNE maps of representations.

Submodules import PyTorch, matplotlib and scikit-learn; import the one you need
(``mirai.analysis.convergence``, ``.curves``, ``.tsne``).
"""
