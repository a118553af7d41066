"""Operations: botsq command, directory monitor, stack, status, Flower, service units."""
