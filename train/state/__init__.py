"""Training state: the pure jitted step, the optimizer, the device mesh and every array's
sharding, and FLOP accounting. May import core/ and models/; never gates/ or another train/
room (checkpoint I/O and resume live in train/ckpt/)."""
