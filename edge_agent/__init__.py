"""The gateway process: sensors -> windows -> edge model -> local alerts, with a durable uplink."""

__version__ = "0.1.0"
