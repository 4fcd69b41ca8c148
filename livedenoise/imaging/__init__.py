"""The imaging model shared by inference and training: PSFs, and synthetic phantoms imaged with
Poisson shot noise and per-pixel sCMOS read noise (in photoelectrons)."""
