"""The data layer: the files stages hand each other (the raw folder's layout, the uint8 cache,
a training run's records), decoding an image file, and the drawn stand-in data sets. No torch;
above runtime, below the model layer."""
