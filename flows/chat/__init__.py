"""The Prompt flow chat (flow.dag.yaml + chat.py) and the endpoint client `phi_client`."""
