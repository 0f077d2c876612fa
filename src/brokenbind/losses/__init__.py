"""Pure tensor loss functions: each equation (BrokenBind arXiv 2602.06451 Eqs. 4-22, CyCLIP arXiv 2205.14459 §3,
CLIP's InfoNCE) lives in the file named after it."""
