"""`gradcamo demo`: a synthetic plate, an honest and a shortcut model, and their Grad-CAMO scores."""
