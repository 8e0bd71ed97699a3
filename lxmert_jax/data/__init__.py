"""On-disk schema, tokenisation and tf.data input pipelines."""
