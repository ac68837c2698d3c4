"""The release bundle per device: packing, signing, verifying and the model card."""
