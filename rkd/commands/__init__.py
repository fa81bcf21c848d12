"""The click commands of `rkd`: each reads its flags once into rkd.config's typed options and runs a job."""
