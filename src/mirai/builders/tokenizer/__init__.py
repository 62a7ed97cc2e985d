"""Training and evaluation of VQ image tokenizers (the model itself is ``mirai.models.vq``)."""
