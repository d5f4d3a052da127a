-- QueryBase demo: a small shop (customers, products, orders, order_items) for MariaDB 10.11.
--
-- Idempotent: drops and recreates its four tables, so loading it again resets the demo (DDL
-- commits implicitly in MariaDB, so this is not one transaction). Load it into database qbtest
-- as root, for example
--     MariaDBServer(".demo/mariadb").start().execute_sql(Path("deploy/demo/shop_mysql.sql").read_text())
-- or  mariadb --socket=<socket> -u root qbtest < deploy/demo/shop_mysql.sql
-- qb_native (ALL) and qb_reader (SELECT) already hold database-wide grants on qbtest from
-- tests/support/localdb.py; the table grants at the end make the file work in any database.

SET NAMES utf8mb4;

DROP TABLE IF EXISTS order_items, orders, products, customers;

CREATE TABLE customers (
    id          INT           NOT NULL AUTO_INCREMENT PRIMARY KEY,
    email       VARCHAR(255)  NOT NULL UNIQUE,
    full_name   VARCHAR(100)  NOT NULL,
    country     CHAR(2)       NOT NULL,
    created_at  DATETIME      NOT NULL DEFAULT CURRENT_TIMESTAMP
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

CREATE TABLE products (
    id          INT            NOT NULL AUTO_INCREMENT PRIMARY KEY,
    sku         VARCHAR(32)    NOT NULL UNIQUE,
    name        VARCHAR(100)   NOT NULL,
    category    VARCHAR(32)    NOT NULL,
    price       DECIMAL(10, 2) NOT NULL CHECK (price >= 0),
    stock       INT            NOT NULL DEFAULT 0 CHECK (stock >= 0)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

CREATE TABLE orders (
    id           INT          NOT NULL AUTO_INCREMENT PRIMARY KEY,
    customer_id  INT          NOT NULL,
    status       VARCHAR(16)  NOT NULL DEFAULT 'pending'
                 CHECK (status IN ('pending', 'paid', 'shipped', 'delivered', 'cancelled')),
    ordered_at   DATETIME     NOT NULL DEFAULT CURRENT_TIMESTAMP,
    CONSTRAINT orders_customer_fk FOREIGN KEY (customer_id) REFERENCES customers (id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

CREATE TABLE order_items (
    order_id    INT            NOT NULL,
    product_id  INT            NOT NULL,
    quantity    INT            NOT NULL CHECK (quantity > 0),
    unit_price  DECIMAL(10, 2) NOT NULL CHECK (unit_price >= 0),
    PRIMARY KEY (order_id, product_id),
    CONSTRAINT order_items_order_fk FOREIGN KEY (order_id) REFERENCES orders (id) ON DELETE CASCADE,
    CONSTRAINT order_items_product_fk FOREIGN KEY (product_id) REFERENCES products (id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

INSERT INTO customers (id, email, full_name, country, created_at) VALUES
    (1, 'maria.schmidt@example.com', 'Maria Schmidt', 'DE', '2024-01-05 09:12:00'),
    (2, 'liam.obrien@example.com', 'Liam O''Brien', 'IE', '2024-01-11 17:40:00'),
    (3, 'zoe.martin@example.org', 'Zoë Martin', 'FR', '2024-01-19 08:03:00'),
    (4, 'kenji.tanaka@example.com', 'Kenji Tanaka', 'JP', '2024-02-02 22:15:00'),
    (5, 'sofia.rossi@example.com', 'Sofia Rossi', 'IT', '2024-02-14 12:30:00'),
    (6, 'jose.garcia@example.com', 'José García', 'ES', '2024-02-27 19:45:00'),
    (7, 'amara.okafor@example.com', 'Amara Okafor', 'NG', '2024-03-08 10:05:00'),
    (8, 'noah.smith@example.com', 'Noah Smith', 'US', '2024-03-21 15:20:00'),
    (9, 'ingrid.larsen@example.com', 'Ingrid Larsen', 'NO', '2024-04-03 07:55:00'),
    (10, 'priya.nair@example.com', 'Priya Nair', 'IN', '2024-04-16 13:10:00'),
    (11, 'lucas.silva@example.com', 'Lucas Silva', 'BR', '2024-05-01 18:25:00'),
    (12, 'emma.dubois@example.org', 'Emma Dubois', 'CA', '2024-05-09 11:00:00');

INSERT INTO products (id, sku, name, category, price, stock) VALUES
    (1, 'MUG-001', 'Ceramic mug, 350 ml', 'kitchen', 12.50, 140),
    (2, 'MUG-002', 'Steel travel mug', 'kitchen', 24.00, 60),
    (3, 'TEA-010', 'Sencha green tea, 100 g', 'groceries', 8.90, 200),
    (4, 'COF-020', 'Espresso beans, 1 kg', 'groceries', 21.40, 75),
    (5, 'BAG-100', 'Canvas tote bag', 'accessories', 15.00, 90),
    (6, 'NBK-200', 'Dotted notebook A5', 'stationery', 9.80, 310),
    (7, 'PEN-210', 'Fountain pen, fine nib', 'stationery', 34.90, 25),
    (8, 'INK-211', 'Ink cartridges, pack of 6', 'stationery', 6.50, 180),
    (9, 'LMP-300', 'LED desk lamp', 'home', 49.00, 18),
    (10, 'CUS-310', 'Wool cushion cover', 'home', 29.00, 40),
    (11, 'SOC-400', 'Merino socks', 'apparel', 16.00, 120),
    (12, 'TSH-410', 'Organic cotton T-shirt', 'apparel', 22.00, 85),
    (13, 'UMB-420', 'Compact umbrella', 'accessories', 19.90, 0),
    (14, 'PUZ-500', 'Jigsaw puzzle, 1000 pieces', 'toys', 27.50, 30),
    (15, 'CRD-510', 'Card game "Tricks"', 'toys', 14.00, 55);

INSERT INTO orders (id, customer_id, status, ordered_at) VALUES
    (1, 1, 'delivered', '2024-03-02 10:15:00'),
    (2, 3, 'delivered', '2024-03-05 16:42:00'),
    (3, 2, 'delivered', '2024-03-11 09:30:00'),
    (4, 5, 'cancelled', '2024-03-18 20:05:00'),
    (5, 4, 'delivered', '2024-03-25 07:48:00'),
    (6, 1, 'delivered', '2024-04-02 12:00:00'),
    (7, 7, 'shipped', '2024-04-09 14:22:00'),
    (8, 6, 'delivered', '2024-04-15 18:37:00'),
    (9, 8, 'shipped', '2024-04-20 11:11:00'),
    (10, 3, 'paid', '2024-04-28 21:50:00'),
    (11, 9, 'delivered', '2024-05-03 08:05:00'),
    (12, 10, 'paid', '2024-05-10 13:33:00'),
    (13, 2, 'shipped', '2024-05-14 17:19:00'),
    (14, 11, 'pending', '2024-05-18 19:02:00'),
    (15, 12, 'paid', '2024-05-21 10:44:00'),
    (16, 5, 'delivered', '2024-05-24 15:27:00'),
    (17, 8, 'pending', '2024-05-27 22:08:00'),
    (18, 1, 'paid', '2024-05-29 09:56:00'),
    (19, 6, 'cancelled', '2024-05-30 16:14:00'),
    (20, 4, 'pending', '2024-05-31 20:31:00');

INSERT INTO order_items (order_id, product_id, quantity, unit_price) VALUES
    (1, 1, 2, 12.50),
    (1, 3, 1, 8.90),
    (2, 6, 3, 9.80),
    (2, 7, 1, 34.90),
    (2, 8, 2, 6.50),
    (3, 4, 1, 21.40),
    (4, 9, 1, 49.00),
    (5, 14, 1, 27.50),
    (5, 15, 2, 14.00),
    (6, 2, 1, 24.00),
    (6, 4, 2, 21.40),
    (7, 11, 3, 16.00),
    (7, 12, 2, 22.00),
    (8, 5, 1, 15.00),
    (8, 10, 2, 29.00),
    (9, 1, 4, 10.00),
    (10, 13, 1, 19.90),
    (10, 3, 2, 8.90),
    (11, 7, 1, 34.90),
    (11, 6, 1, 9.80),
    (12, 12, 1, 22.00),
    (13, 9, 1, 49.00),
    (13, 10, 1, 29.00),
    (14, 15, 1, 14.00),
    (15, 4, 1, 21.40),
    (15, 1, 2, 12.50),
    (16, 11, 2, 12.80),
    (17, 14, 1, 27.50),
    (17, 5, 1, 15.00),
    (18, 6, 5, 8.50),
    (18, 8, 3, 6.50),
    (19, 2, 1, 24.00),
    (20, 3, 4, 8.90),
    (20, 4, 1, 21.40);

GRANT SELECT ON customers TO 'qb_reader'@'%';
GRANT SELECT ON products TO 'qb_reader'@'%';
GRANT SELECT ON orders TO 'qb_reader'@'%';
GRANT SELECT ON order_items TO 'qb_reader'@'%';
GRANT SELECT, INSERT, UPDATE, DELETE ON customers TO 'qb_native'@'%';
GRANT SELECT, INSERT, UPDATE, DELETE ON products TO 'qb_native'@'%';
GRANT SELECT, INSERT, UPDATE, DELETE ON orders TO 'qb_native'@'%';
GRANT SELECT, INSERT, UPDATE, DELETE ON order_items TO 'qb_native'@'%';
