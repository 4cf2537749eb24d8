import java.util.ArrayList;
import java.util.Collection;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.Set;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;

import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.Config;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.clients.admin.TopicDescription;
import org.apache.kafka.common.Node;
import org.apache.kafka.common.TopicPartitionInfo;
import org.apache.kafka.common.config.ConfigResource;
import org.apache.kafka.common.errors.TopicExistsException;

/**
 * Readiness probe and topic bootstrap for the local Kafka stack (deploy/local/stack).
 *
 * <pre>
 * java -cp 'libs/*:classes' StackAdmin BOOTSTRAP BROKERS TIMEOUT_S [TOPIC:PARTITIONS[:CONFIG=VALUE...]]...
 * </pre>
 *
 * Waits until BROKERS brokers are registered and unfenced (the metadata a client sees, not
 * just an open port), creates each TOPIC that is absent with replication factor BROKERS,
 * then waits until every partition of those topics has a leader and a full ISR, so the
 * first produce after `stack up` does not race leader election. Prints one line per topic.
 * Exit 0 when ready, 1 on timeout or error (with the reason on stderr).
 *
 * One JVM does all of it: starting a JVM is the slow part of each Kafka CLI tool, and the
 * stack script runs this on every `up`, including the warm one that must be quick.
 */
public final class StackAdmin {
    public static void main(String[] args) throws Exception {
        if (args.length < 3) {
            System.err.println("usage: StackAdmin BOOTSTRAP BROKERS TIMEOUT_S [TOPIC:PARTITIONS[:K=V...]]...");
            System.exit(2);
        }
        String bootstrap = args[0];
        int brokers = Integer.parseInt(args[1]);
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(Long.parseLong(args[2]));

        List<NewTopic> wanted = new ArrayList<>();
        for (int i = 3; i < args.length; i++) {
            String[] parts = args[i].split(":");
            NewTopic topic = new NewTopic(parts[0], Integer.parseInt(parts[1]), (short) brokers);
            Map<String, String> configs = new HashMap<>();
            for (int j = 2; j < parts.length; j++) {
                String[] kv = parts[j].split("=", 2);
                configs.put(kv[0], kv[1]);
            }
            wanted.add(topic.configs(configs));
        }

        Properties props = new Properties();
        props.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        props.put(AdminClientConfig.CLIENT_ID_CONFIG, "local-stack-admin");
        // Short per-call timeouts; the loop below owns the overall deadline.
        props.put(AdminClientConfig.REQUEST_TIMEOUT_MS_CONFIG, "3000");
        props.put(AdminClientConfig.DEFAULT_API_TIMEOUT_MS_CONFIG, "5000");
        props.put(AdminClientConfig.RETRY_BACKOFF_MS_CONFIG, "200");

        String lastError = "no answer yet";
        try (Admin admin = Admin.create(props)) {
            while (System.nanoTime() < deadline) {
                try {
                    Collection<Node> nodes = admin.describeCluster().nodes().get(5, TimeUnit.SECONDS);
                    if (nodes.size() < brokers) {
                        lastError = nodes.size() + " of " + brokers + " brokers registered";
                    } else if (ensureTopics(admin, wanted, brokers)) {
                        return;
                    } else {
                        lastError = "topic partitions without a leader or with a short ISR";
                    }
                } catch (ExecutionException e) {
                    lastError = String.valueOf(e.getCause());
                } catch (java.util.concurrent.TimeoutException e) {
                    lastError = "metadata request timed out";
                }
                Thread.sleep(500);
            }
        }
        System.err.println("kafka at " + bootstrap + " not ready: " + lastError);
        System.exit(1);
    }

    /** Creates absent topics; true once all of them have a leader and a full ISR everywhere. */
    private static boolean ensureTopics(Admin admin, List<NewTopic> wanted, int brokers) throws Exception {
        if (wanted.isEmpty()) {
            return true;
        }
        Set<String> existing = admin.listTopics().names().get(5, TimeUnit.SECONDS);
        List<NewTopic> missing = new ArrayList<>();
        for (NewTopic t : wanted) {
            if (!existing.contains(t.name())) {
                missing.add(t);
            }
        }
        if (!missing.isEmpty()) {
            try {
                admin.createTopics(missing).all().get(10, TimeUnit.SECONDS);
            } catch (ExecutionException e) {
                // Another `stack up` (or a test) created it at the same moment: fine.
                if (!(e.getCause() instanceof TopicExistsException)) {
                    throw e;
                }
            }
        }

        List<String> names = new ArrayList<>();
        List<ConfigResource> resources = new ArrayList<>();
        for (NewTopic t : wanted) {
            names.add(t.name());
            resources.add(new ConfigResource(ConfigResource.Type.TOPIC, t.name()));
        }
        Map<String, TopicDescription> descriptions =
            admin.describeTopics(names).allTopicNames().get(5, TimeUnit.SECONDS);
        for (TopicDescription d : descriptions.values()) {
            for (TopicPartitionInfo p : d.partitions()) {
                if (p.leader() == null || p.leader().isEmpty() || p.isr().size() < p.replicas().size()) {
                    return false;
                }
            }
        }
        Map<ConfigResource, Config> configs = admin.describeConfigs(resources).all().get(5, TimeUnit.SECONDS);
        for (NewTopic t : wanted) {
            TopicDescription d = descriptions.get(t.name());
            Config c = configs.get(new ConfigResource(ConfigResource.Type.TOPIC, t.name()));
            System.out.printf("topic %s partitions=%d replication.factor=%d min.insync.replicas=%s%n",
                t.name(), d.partitions().size(), d.partitions().get(0).replicas().size(),
                c.get("min.insync.replicas").value());
        }
        return true;
    }
}
