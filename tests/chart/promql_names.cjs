// Parse PromQL queries with the Prometheus project's own grammar (@prometheus-io/lezer-promql, on
// NODE_PATH; installed by e2e/gitops/promql.sh). stdin: a JSON list of queries; stdout: a JSON
// list of {error, metrics}: the offset of the first syntax error (or null), and the metric names
// the query selects.
const {parser} = require("@prometheus-io/lezer-promql");

const queries = JSON.parse(require("fs").readFileSync(0, "utf8"));
const out = queries.map((q) => {
    let error = null;
    const metrics = [];
    parser.parse(q).iterate({
        enter(n) {
            if (n.type.isError && error === null) error = n.from;
            if (n.name === "Identifier" && n.node.parent && n.node.parent.name === "VectorSelector")
                metrics.push(q.slice(n.from, n.to));
            if (n.name === "LabelName" && q.slice(n.from, n.to) === "__name__") metrics.push("__name__");
        },
    });
    return {error, metrics};
});
process.stdout.write(JSON.stringify(out));
