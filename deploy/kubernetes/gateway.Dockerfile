# The gateway's image for a cluster: openshell from this checkout's build
# (`npm run build` first), its runtime dependencies, nothing else. Build from
# the repository's root:
#   docker build -f deploy/kubernetes/gateway.Dockerfile -t openshell-gateway:dev .
FROM node:20-bookworm-slim
WORKDIR /opt/openshell
COPY package.json package-lock.json ./
# The store's native module is the only one built; no install script of ours runs.
RUN npm ci --omit=dev --ignore-scripts && npm rebuild better-sqlite3 && npm cache clean --force
COPY bin ./bin
COPY dist ./dist
USER 10001:10001
ENTRYPOINT ["/opt/openshell/bin/openshell"]
