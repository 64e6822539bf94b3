# The worker for production runs: the same bootstrap as the zip, with git, OpenTofu and Pulumi.
# Not built or tested by Tarmac's test suite (there is no image builder on its machines); see
# infra/README.md for building, pushing and deploying it.
#
# The build context is the worker's binary directory (nothing else is sent to the builder):
#   cargo lambda build --profile lambda-zip --arm64 -p worker  # target/lambda/worker/bootstrap
#   docker build --platform linux/arm64 -f infra/worker.Dockerfile -t $REPO:$TAG target/lambda/worker
FROM public.ecr.aws/lambda/provided:al2023

ARG TARGETARCH
ARG TOFU_VERSION=1.10.7
ARG PULUMI_VERSION=3.205.0

# git (and ssh, for gitAuth.sshAuth) for sources; tar/gzip/unzip to unpack the engines. Pulumi programs in Node.js or Python
# also need their language runtime: add `nodejs` or `python3` here (YAML programs need none).
RUN dnf install -y git-core openssh-clients tar gzip unzip && dnf clean all

RUN set -eux; \
    case "$TARGETARCH" in arm64) tofu=arm64; pulumi=arm64 ;; amd64) tofu=amd64; pulumi=x64 ;; *) exit 1 ;; esac; \
    curl -fsSL "https://github.com/opentofu/opentofu/releases/download/v${TOFU_VERSION}/tofu_${TOFU_VERSION}_linux_${tofu}.zip" -o /tmp/tofu.zip; \
    unzip -q /tmp/tofu.zip tofu -d /usr/local/bin; rm /tmp/tofu.zip; \
    curl -fsSL "https://get.pulumi.com/releases/sdk/pulumi-v${PULUMI_VERSION}-linux-${pulumi}.tar.gz" | tar -xz -C /opt; \
    ln -s /opt/pulumi/* /usr/local/bin/; \
    tofu version; pulumi version

# The engines keep plugins and caches under HOME; Lambda's only writable disk is /tmp, and
# Tarmac gives each run a HOME of its own there.
COPY bootstrap ${LAMBDA_RUNTIME_DIR}/bootstrap
CMD ["bootstrap"]
