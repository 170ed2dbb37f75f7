"""Pure: the model and the secrets -> the files each node's card carries."""
