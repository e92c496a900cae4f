"""Guardrails of a public service: access tokens, watermark + signed session records, safety filters and
rate limits, the encrypted triage buffer. Imports only worldlab.config and env (transport and server use it).
"""
