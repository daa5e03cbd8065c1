"""Measures that need no training: noise map, GNL, SNR/CNR, body mask, reference SSIM."""
