# Training image: kft on TensorFlow's GPU image. Build and run:
#   docker build -t kft .
#   docker run --gpus all -v "$PWD/data:/data" -v "$PWD/runs:/kft/runs" kft \
#       run recipes/cats_dogs.py --data /data/pets
FROM tensorflow/tensorflow:2.21.0-gpu

WORKDIR /kft
COPY pyproject.toml setup.cfg README.md ./
COPY kft ./kft
COPY recipes ./recipes
RUN python -m pip install --no-cache-dir .

ENTRYPOINT ["kft"]
CMD ["--help"]
