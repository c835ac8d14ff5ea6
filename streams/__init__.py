"""The pure domain core: raw Prefect operations in, Prefect events and new state out.

Nothing here imports Faust or Kafka, so every rule of the spec is testable without a broker.
"""
