"""Pure tensor loss functions: each equation of method.md lives in the file named after it."""
