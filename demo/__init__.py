"""`make demo`: the whole finetune-phi path, offline, on one machine."""
