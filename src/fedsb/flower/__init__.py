"""fedsb on Flower (Message API, flwr 1.41): a Strategy wrapping any fedsb method, the ClientApp, the ServerApp,
Flower-simulation and local-deployment helpers, wire-level byte accounting and SecAgg+.

Import the submodules directly (``fedsb.flower.serverapp:app``, ``fedsb.flower.clientapp:app``); this package
import stays light so ``fedsb`` does not load Flower unless asked to.
"""
