"""Tiny offline components for tests and the scenario: a SAM built from a config, a small segmentation UNet."""

from __future__ import annotations


def tiny_sam(image_size: int = 32, seed: int = 0):
    """A randomly initialised ``SamModel`` (~9k parameters) from a config: nothing is downloaded."""
    import torch
    from transformers import SamConfig, SamModel

    vision = dict(hidden_size=16, output_channels=8, num_hidden_layers=1, num_attention_heads=2, image_size=image_size,
                  patch_size=8, mlp_dim=32, window_size=2, global_attn_indexes=[0], num_pos_feats=8)
    config = SamConfig(vision_config=vision,
                       prompt_encoder_config=dict(hidden_size=8, image_size=image_size, patch_size=8),
                       mask_decoder_config=dict(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, mlp_dim=16,
                                                iou_head_hidden_dim=8))
    torch.manual_seed(seed)
    return SamModel(config)


def tiny_segmentation_unet(num_classes: int = 2, in_channels: int = 1, size: int = 32, seed: int = 0):
    """diffusers' ``UNet2DModel`` configured as a segmentation network: out_channels = classes, no attention."""
    import torch
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    return UNet2DModel(sample_size=size, in_channels=in_channels, out_channels=num_classes,
                       block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))
