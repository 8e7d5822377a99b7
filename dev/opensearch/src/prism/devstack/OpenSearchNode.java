package prism.devstack;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Collection;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;

import org.apache.logging.log4j.LogManager;
import org.opensearch.Version;
import org.opensearch.common.settings.Settings;
import org.opensearch.env.Environment;
import org.opensearch.node.InternalSettingsPreparer;
import org.opensearch.node.Node;
import org.opensearch.plugins.Plugin;

/**
 * Runs one OpenSearch node in the foreground for Prism's dev stack (dev/stack up elasticsearch).
 *
 * <p>Usage: {@code java [jvm options] -cp CLASSPATH prism.devstack.OpenSearchNode key=value...}
 * where each argument is a node setting (as in opensearch.yml); {@code path.home} is required.
 *
 * <p>Unlike the packaged distribution this does not go through OpenSearch's Bootstrap: there is no
 * security manager, no bootstrap checks and no keystore, and the modules below are loaded from the
 * classpath instead of a modules/ directory. The node is closed cleanly when the JVM gets SIGTERM.
 */
public final class OpenSearchNode {

    /** Modules of the OpenSearch 2.x distribution that the dev stack needs (2.x class names). */
    private static final List<String> MODULES = List.of(
        "org.opensearch.transport.Netty4Plugin",
        "org.opensearch.analysis.common.CommonAnalysisPlugin",
        "org.opensearch.painless.PainlessPlugin",
        "org.opensearch.index.mapper.MapperExtrasPlugin",
        "org.opensearch.index.reindex.ReindexPlugin");

    /** Node's plugin-accepting constructor is protected. */
    private static final class ClasspathNode extends Node {
        ClasspathNode(Environment environment, Collection<Class<? extends Plugin>> plugins) {
            super(environment, plugins, true);
        }
    }

    private OpenSearchNode() {}

    public static void main(String[] args) throws Exception {
        Thread.setDefaultUncaughtExceptionHandler((thread, e) -> {
            System.err.println("uncaught exception in thread [" + thread.getName() + "]");
            e.printStackTrace();
            if (e instanceof Error) {
                // Same policy as OpenSearch's own handler: a JVM error leaves the node unusable.
                Runtime.getRuntime().halt(e instanceof VirtualMachineError ? 127 : 1);
            }
        });

        Settings.Builder builder = Settings.builder();
        for (String arg : args) {
            String setting = arg.startsWith("-E") ? arg.substring(2) : arg;
            int eq = setting.indexOf('=');
            if (eq <= 0) {
                usage("not a key=value setting: " + arg);
            }
            builder.put(setting.substring(0, eq), setting.substring(eq + 1));
        }
        Settings settings = builder.build();
        String home = settings.get("path.home");
        if (home == null || home.isEmpty()) {
            usage("path.home=DIR is required");
        }
        Path homeDir = Path.of(home).toAbsolutePath();
        // PluginsService lists config/, plugins/ and modules/ even when they are empty.
        for (String dir : new String[] {"config", "plugins", "modules", "data", "logs"}) {
            Files.createDirectories(homeDir.resolve(dir));
        }

        Environment environment = InternalSettingsPreparer.prepareEnvironment(
            settings, Map.of(), homeDir.resolve("config"), () -> "node-1");

        List<Class<? extends Plugin>> plugins = new java.util.ArrayList<>();
        for (String name : MODULES) {
            plugins.add(Class.forName(name).asSubclass(Plugin.class));
        }

        Node node = new ClasspathNode(environment, plugins);
        CountDownLatch closed = new CountDownLatch(1);
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            try {
                node.close();
                if (!node.awaitClose(30, TimeUnit.SECONDS)) {
                    System.err.println("OpenSearch node did not close within 30s");
                }
            } catch (Exception e) {
                e.printStackTrace();
            } finally {
                closed.countDown();
                // log4j's own shutdown hook is disabled (-Dlog4j.shutdownHookEnabled=false) so that the
                // node can log while closing; flush and stop it last.
                LogManager.shutdown();
            }
        }, "prism-opensearch-shutdown"));

        try {
            node.start();
        } catch (Throwable e) {
            System.err.println("OpenSearch node failed to start: " + e);
            e.printStackTrace();
            System.exit(1);
        }
        System.out.println("OpenSearch " + Version.CURRENT + " started (node " + environment.settings().get("node.name")
            + ", home " + homeDir + ")");
        // Keep a non-daemon thread alive until the shutdown hook has closed the node.
        closed.await();
    }

    private static void usage(String problem) {
        System.err.println("error: " + problem);
        System.err.println("usage: java -cp CLASSPATH " + OpenSearchNode.class.getName()
            + " path.home=DIR [setting=value...]");
        System.exit(2);
    }
}
