"""The offer catalogue (``offers.yaml``) and its eligibility rule language: what may be offered,
read by the decision service, training and the simulator alike."""
