from churn_assets.generator.generate import generate_history, generate_increment

__all__ = ["generate_history", "generate_increment"]
