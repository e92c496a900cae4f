"""The learned DOOM world model: its data (explorer episodes), tokenizer (autoencoder) and trainers.
Importing this package does not import vizdoom or train anything.
"""
