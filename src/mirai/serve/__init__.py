"""``mirai serve``: a local web page that samples a GPT checkpoint (``mirai.serve.app``).

Flask, the web layer, is the optional ``serve`` extra and is imported only when a page is built.
"""
