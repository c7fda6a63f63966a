"""LoRA for Trust Region alignment: the policy, its moving reference and its start share one
frozen base (see docs/lora.md). ``config`` reads ``model.lora``; ``update`` is the reference rule
on the factors (pure tensor functions); ``adapters`` builds the models; ``export`` writes them."""
