"""`python -m harclip.pretrain clip|siglip`: pretrain the demo's tiny CLIP and SigLIP on the
captioned synthetic world (models/pretrained/)."""
