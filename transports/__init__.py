"""Broker drivers for anychannel. Each module is loaded only when its URL scheme is used."""
