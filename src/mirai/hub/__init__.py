"""Pretrained weights by name: ``mirai.hub.resolve`` turns a local path, a committed asset name,
an ``hf://`` address or a released LlamaGen/PAR short name into a local file or folder;
``mirai.hub.pretrained`` saves, loads and uploads Mirai checkpoints on the Hugging Face Hub.

This file imports neither: ``mirai.checkpoint`` uses the resolver, and the Hub API uses
``mirai.checkpoint``, so loading the package must not load both.
"""
